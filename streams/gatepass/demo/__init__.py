"""The procure-bot story (`gatepass demo`) and the demo target system it calls."""
