"""Command-line entry point: `python -m dwf_jax.main --config=configs/iris_mlp.py` (the command line is cli.py).

Ctrl-C is routed before anything else is imported: numpy, jax and orbax start
threads, and each inherits the signal mask of the thread that starts it.
"""

import _thread
import signal
import threading


def route_ctrl_c_to_main_thread() -> None:
    """Block SIGINT in every thread but a watcher, which raises it in the main thread as Python would.

    A SIGINT landing in one of the runtime's own threads now and then wedged a running
    computation (the main thread then waited in BlockUntilReady forever).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def forward() -> None:
        while True:
            signal.sigwait({signal.SIGINT})
            _thread.interrupt_main(signal.SIGINT)

    threading.Thread(target=forward, name="ctrl-c", daemon=True).start()


if __name__ == "__main__":
    route_ctrl_c_to_main_thread()
    from dwf_jax import cli

    cli.run()
