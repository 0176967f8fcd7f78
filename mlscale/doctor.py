"""``mlscale doctor`` / ``ms.doctor()``: what this machine offers (placeholder until CLI lands)."""


def doctor(print_report=True):
    raise NotImplementedError
