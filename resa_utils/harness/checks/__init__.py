"""Each notebook's parameter checks, one module per notebook (`checks.gba_recovery` for
`05_gba_recovery`): `CHECKS` (one check per parameter) and `cross(p)` (conditions between
parameters). A notebook's check cell calls `params.validate(NOTEBOOK, params, CHECKS, extra=cross)`,
and the runner runs the same cell before any compute."""
