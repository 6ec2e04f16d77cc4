"""Placeholder: replaced by TopCAT's download store and StatusCheck."""


class TopcatState:
    def __init__(self, fac):
        self.fac = fac

    def start(self, base_url: str) -> None: ...

    def stop(self) -> None: ...
