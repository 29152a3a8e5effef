"""What a run prints: kakugo's own lines in plain text, and how loud the libraries it
drives are (Ray, Ray Data, Ray Serve, vLLM, transformers, lm-eval).

By default the libraries log as they do on their own. Quiet (`kakugo ... --quiet`, or
`KAKUGO_QUIET=1`; `make demo` sets it) keeps them to their warnings, so that kakugo's
progress lines are readable: Ray Data's progress bars and progress logs off, Serve's
controller, proxy and replicas at WARNING without access logs, vLLM at WARNING, no tqdm
bars (lm-eval's request bars, checkpoint loading), and no JSON lines from the root logger
that Ray's LLM modules install. The setting reaches every process of the run through the
environment given to `ray.init` (`worker_env`) and the Serve logging config
(`serve_logging_config`); `configure` must run before those libraries are imported.
"""

from __future__ import annotations

import logging
import os

QUIET_ENV = "KAKUGO_QUIET"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Python loggers of the libraries (in the driver and in workers)
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "vllm", "lm_eval", "lm-eval",
                   "transformers", "datasets", "httpx", "DeepSpeed", "deepspeed")


def quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0", "false")


def set_quiet(value: bool) -> None:
    """Quiet this process and every Ray worker it starts from now on."""
    if value:
        os.environ[QUIET_ENV] = "1"


# what quiet sets for the libraries, read from the environment when they start (tqdm's
# defaults when it is first imported: kakugo's CLI imports none of these before `configure`)
QUIET_LIBRARY_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                     "RAY_DATA_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1",
                     "TRANSFORMERS_VERBOSITY": "error", "LMEVAL_LOG_LEVEL": "WARNING"}
_set_here: dict[str, str] = {}  # the variables of QUIET_LIBRARY_ENV `configure` set


def worker_env() -> dict[str, str]:
    """Environment variables for every process of the run (`ray.init`'s runtime env): the
    library settings `configure` put in this process's environment. Variables that were
    already set (by the user, or by a job's own runtime env) are theirs and not repeated."""
    return dict(_set_here)


def serve_logging_config(*, access_log: bool = True) -> dict[str, object]:
    """Ray Serve's `logging_config` for kakugo's deployments and for Serve itself."""
    if quiet():
        return {"log_level": "WARNING", "enable_access_log": False}
    return {"log_level": "INFO", "enable_access_log": access_log}


def kakugo_logger(verbose: bool = False) -> logging.Logger:
    """kakugo's loggers print plain lines to stderr through a handler of their own: Ray's
    LLM modules replace the root logger's handlers with a JSON one, and Ray Train sends a
    worker's `print` to the root logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    ours = logging.getLogger("kakugo")
    ours.handlers, ours.propagate = [handler], False
    ours.setLevel(logging.DEBUG if verbose else logging.INFO)
    return ours


def configure(verbose: bool = False) -> None:
    """The driver's logging: kakugo's lines at INFO (DEBUG if verbose), and when quiet the
    libraries' and the root logger's at WARNING."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT)
    kakugo_logger(verbose)
    if quiet():
        for key, value in QUIET_LIBRARY_ENV.items():
            if key not in os.environ:
                os.environ[key] = _set_here[key] = value
        # importing Ray's LLM modules sets the root logger to INFO with a JSON handler (and
        # vLLM logs through it while it loads): import them first, with the libraries held
        # to errors, then put the root logger back to plain lines and all at WARNING
        for name in ("", *LIBRARY_LOGGERS):
            logging.getLogger(name).setLevel(logging.ERROR)  # while importing
        import ray.data
        import ray.data.llm
        import ray.serve.llm

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().handlers = [handler]
        for name in ("", *LIBRARY_LOGGERS):
            logging.getLogger(name).setLevel(logging.WARNING)
        # datasets made here carry this context to the actors that run them (Ray Train's
        # shard coordinators too); its default was read from the environment at import
        ray.data.DataContext.get_current().enable_progress_bars = False
