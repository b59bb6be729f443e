"""run(config): `vr train`, in one process or as one DDP rank under torchrun, or the launcher of
``--nproc-per-node`` ranks. The run is built by vr.train.setup and trained by vr.train.fit; this
module owns what surrounds it: the launcher, the process group, the resume after a torchrun
restart, and how errors, Ctrl-C and SIGTERM on any rank end the run.
"""

from __future__ import annotations

from vr.errors import VrError
from vr.train import distributed as D
from vr.train.config import TrainConfig
from vr.train.fit import TrainingInterrupted, TrainResult, fit
from vr.train.setup import elastic_resume, precheck_launch, setup
from vr.util.console import err_console


def run(cfg: TrainConfig) -> TrainResult | None:
    """Train according to ``cfg``; write the run folder; return the summary.

    With ``nproc_per_node > 1`` outside torchrun, re-launch through torchrun and return None;
    a non-zero exit of the workers is raised as SystemExit (they have reported it already).
    Under torchrun, a restarted worker group (``--max-restarts``) continues the run in --out
    from its last.pt without --resume.
    """
    if cfg.nproc_per_node > 1 and not D.under_torchrun():
        precheck_launch(cfg)
        code = D.launch(cfg)
        if code:
            raise SystemExit(code)
        return None

    import signal
    import threading

    restore_int = None
    if D.under_torchrun() and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        restore_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # the launcher ignores it for us
    ctx, device = D.setup(cfg.device)
    clean = False
    try:
        if ctx.on_main(lambda: elastic_resume(cfg)):
            cfg = cfg.replace(resume=True)
        result = fit(setup(cfg, ctx, device))
        clean = True
        return result
    except (TrainingInterrupted, D.AgreedError) as e:
        agreed = isinstance(e, D.AgreedError) or e.agreed
        code = e.code if isinstance(e, TrainingInterrupted) else 2
        if ctx.enabled and agreed:
            clean = True
            if D.launched_by_vr():
                # Exit 0 so torchrun does not report a "failure"; the launcher exits with `code`.
                if ctx.is_main:
                    if isinstance(e, VrError):
                        from rich.markup import escape

                        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
                    D.write_status(code)
                return None
            if not ctx.is_main:
                raise SystemExit(code) from None  # rank 0 reports it
        raise
    except VrError as e:
        if ctx.enabled and not ctx.is_main:
            D.unquiet(ctx)
            raise VrError(f"rank {ctx.rank}: {e}") from e
        raise
    except BaseException:
        D.unquiet(ctx)
        raise
    finally:
        D.teardown(ctx, clean)
        if restore_int is not None:
            signal.signal(signal.SIGINT, restore_int)
