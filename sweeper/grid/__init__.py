"""The grid file: YAML loading, stages and job specs, hand-offs, ranking, job kinds by name."""
