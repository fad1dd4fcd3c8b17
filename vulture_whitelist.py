"""Names that vulture (`make lint`) would call unused but that a framework calls by name."""
# ruff: noqa: B018, F821

# Ray Tune calls these on a Callback, a Stopper, a Logger callback or a Trial
on_trial_complete
on_trial_error
on_step_end
stop_all
_start_logging_actor
_cleanup_logging_actors
evaluated_params
init_local_path
experiment_dir_name
local_path
# a class made at run time is named for Ray's and the logger's messages
__qualname__
# PyYAML reads a loader's resolvers from this class attribute
yaml_implicit_resolvers
# public names for scripts over the claims table
VERDICTS
# pytest calls these hooks of tests/conftest.py by name
pytest_runtest_logreport
pytest_collection_finish
pytest_terminal_summary
