"""evmamba.core: the bottom layer -- basics that every other layer may use and that import nothing of evmamba.

* :mod:`.events` -- the event dtype (``x``, ``y``, ``t`` in µs, ``p``) and the sensor size;
* :mod:`.checks` -- argument checks that raise ``TypeError`` / ``ValueError`` naming the argument;
* :mod:`.files` -- atomic file writes (a temporary file beside the target, renamed over it);
* :mod:`.output` -- JSON records with the machine's description, and plain-text tables;
* :mod:`.config` -- YAML configs with ``key.sub=value`` overrides (OmegaConf), by name or path;
* :mod:`.lazy` -- lazy package exports, so that importing a package stays cheap.

Only numpy, the standard library and (for :mod:`.config`) OmegaConf are imported here.
"""
