"""The kernel layer: each op's loop-level lowering (beside its op family, in the same-named
file) and the builder that turns a fusion group into kernel source and launch steps."""
