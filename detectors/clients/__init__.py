"""The suspicious-client detector (`detector`) and its parts: the neighbour search
(`neighbours`), the measures its statistics are built from (`statistics`), decision-region
coverage (`coverage`), the benign null it judges each client against (`null`), how a look
spends the false-alarm budget (`spending`) and its data-only checkpoint helpers (`codec`)."""
