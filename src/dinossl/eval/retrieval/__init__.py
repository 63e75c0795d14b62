"""Nearest-neighbour evaluations and tools on global image descriptors.

Modules, each building on the ones before it:

* :mod:`~dinossl.eval.retrieval.ranking_metrics`: AP and precision at k as the benchmarks define them;
* :mod:`~dinossl.eval.retrieval.benchmark_files`: the revisited Oxford/Paris files (restricted unpickler);
* :mod:`~dinossl.eval.retrieval.copydays_files`: the Copydays layout and each query's originals;
* :mod:`~dinossl.eval.retrieval.image_files`: image files of a folder, checked before any work;
* :mod:`~dinossl.eval.retrieval.descriptors`: one descriptor per image ([CLS], multiscale, [CLS] + GeM);
* :mod:`~dinossl.eval.retrieval.whitening`: PCA whitening learned on a set;
* :mod:`~dinossl.eval.retrieval.feature_store`: float16 memory-mapped descriptors, resumable;
* :mod:`~dinossl.eval.retrieval.contact_sheet`: thumbnails of image groups;
* :mod:`~dinossl.eval.retrieval.revisited`, :mod:`~dinossl.eval.retrieval.copydays`,
  :mod:`~dinossl.eval.retrieval.dedupe`: ``dino eval retrieval``, ``dino eval copydetection``
  and ``dino dedupe`` end to end.

The search itself (tiled top-k and thresholded pairs) is :mod:`dinossl.eval.search`.
"""
