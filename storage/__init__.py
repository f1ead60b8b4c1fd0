"""Storage: the tables (`models`), the database handle (`db`), the write side (`unit_of_work`,
`notifications`), the read side (`queries`) and the contract's incident JSON (`contract`).

Imports no agent: the agent writes through a unit of work and reads through `Repository`.
"""
