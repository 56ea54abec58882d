"""Triton kernels for coupling-flow edits, each beside its pure-torch reference.

Modules (import them directly; this package imports nothing, so ``import curvedit.kernels`` stays cheap):
``configs`` (precisions, tile configurations, ``triton_available``), ``packing`` (``pack_flow``),
``coupling`` (one fused coupling layer, forward/inverse), ``edit`` (the whole edit in one launch, ``EditPlan``
batch buckets), ``compile_check`` (sm_90 compile-only check). Set ``TRITON_INTERPRET=1`` before importing a kernel
module to run them on the CPU.
"""
