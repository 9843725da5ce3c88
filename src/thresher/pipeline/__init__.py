"""The pipeline layer: recipes (config and checks), their stages, the run, private clients, the printed summary.

It composes the layers below (data, scoring, selection, training, engine) and is used by the CLI."""
