"""The stages of a campaign round, one module each, each a function of a
`StageContext` and the round that returns a `Decision` (docs/architecture.md).

`gnome_loop.campaign` maps the stage names stored in the database to these
functions and commits each stage's decision with the move to the next stage.
"""
