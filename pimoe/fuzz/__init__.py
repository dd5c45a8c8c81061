"""Fuzzing pimoe's inputs: GGUF files, command lines and QPU programs (issue 10).

    gguf_mutate    GGUF files split into fields, and the mutations aimed at them
    cli_lines      bad command lines for every command
    qpu_programs   random and mutated QPU programs
    targets        what one case runs (info / load_model / run; pimoe.cli.main; the emulator)
    engine         hypothesis draws the cases; a worker with a memory and time cap runs them
    worker         the worker process

`pimoe fuzz gguf|cli|qpu|all --seconds N` runs it and writes results/fuzz-<time>.json;
tests/test_fuzz.py runs a short, fixed-seed version of each kind.
"""
