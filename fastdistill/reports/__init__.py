"""Applications built on the public API: reports that run and compare whole distillations."""
