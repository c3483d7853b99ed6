"""The one error type the entry points turn into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input or configuration that the user can fix; the message names the fix."""


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError behind `exc`, if any (Hydra wraps errors raised inside `instantiate`)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def run_or_exit(task, cfg, *, name: str):
    """Run an entry point's task; a UserError anywhere beneath becomes one logged line and exit code 2."""
    import logging
    import sys

    if name != "plan" and hasattr(cfg, "get") and cfg.get("stages"):  # e.g. train.py experiment=paper
        logging.getLogger(name).error("error: this experiment is a plan of stages; run it with plan.py (python plan.py experiment=...)")
        sys.exit(2)
    try:
        return task(cfg)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        logging.getLogger(name).error("error: %s", user_error)
        sys.exit(2)


def check_at_least(value, key: str, minimum: int = 1, *, optional: bool = False):
    """A configured count (`key`) of at least `minimum` (None allowed when `optional`), or a UserError naming it."""
    if value is None and optional:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        unset = " or leave it unset (null)" if optional else ""
        raise UserError(f"{key}={value}: set it to an integer of at least {minimum}{unset}")
    return value
