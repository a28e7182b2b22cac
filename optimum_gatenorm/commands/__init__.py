from .gatenorm import GateNormCommand


__all__ = ["GateNormCommand"]
