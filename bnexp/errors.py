"""The one error type for user mistakes: the CLI prints it as a short message and exits 2."""


class BnexpError(Exception):
    """A problem the user can fix (bad override, missing data, bad value).

    The message says what was wrong and how to fix it; bugs keep their own exception types so
    that their tracebacks stay visible.
    """


def one_line_warnings() -> None:
    """Show warnings as one line ("warning: ..."), without the source line Python prints: they
    are messages for a user at a terminal (the CLI and sweep jobs install this)."""
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    # configs/hydra/launcher/{joblib,submitit_*}.yaml deliberately share their names with the
    # plugins' schemas, so Hydra validates our launcher settings against them; Hydra 1.3 still
    # does this ("automatic schema matching") but warns on every compose that it is deprecated.
    warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema")
