"""How often block discovery agrees with the zoos' own grouping, on every architecture they
ship: ``python -m freezeflow.zoo`` (:mod:`freezeflow.zoo.__main__`).

:mod:`~freezeflow.zoo.measure` measures one timm model name or transformers model type, built
on the meta device; :mod:`~freezeflow.zoo.report` writes the results (``docs/zoo/*.json``)
and the generated part of ``docs/model-zoo.md``. A program beside the command line: nothing
in the library imports it (an import contract).
"""
