"""Parts of the suspicious-client detector (`detectors.query_patterns`): the benign null it
judges each client against (`null`) and its data-only checkpoint helpers (`codec`)."""
