"""Random annotated programs checked against their unpartitioned selves (issue 11's fuzzer).

`gen.random_program(seed, i)` / `gen.hypothesis_program(data, mesh, grad)` make a program,
`check.run_case` runs and classifies it, `shrink.shrink` minimises a failure, and
`campaign.campaign` runs thousands under a watchdog (`gshard fuzz --cases N --seed S`).
"""
