"""Weight-averaging tricks of danlu.optim (EMA, SWA, FMA)."""

from danlu.optim import EMA, FMA, SWA

FACTORIES = {
    "EMA": lambda model, opt: EMA(model, decay=0.9),
    "EMA_warmup_every2": lambda model, opt: EMA(model, decay=0.99, warmup=True, every=2),
    "SWA": lambda model, opt: SWA(model, opt, swa_lr=1e-3, start_step=2, anneal=2),
    "FMA": lambda model, opt: FMA(model),
}
