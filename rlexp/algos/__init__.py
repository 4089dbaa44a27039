"""The algorithms, one module each; :mod:`rlexp.algos.registry` names them and builds their agents."""
