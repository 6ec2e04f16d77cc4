"""Placeholder: replaced by the two-level storage model."""


class Storage:
    def __init__(self, fac):
        self.fac = fac

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def fail_next_restores(self, count=1, datafile_ids=None, dataset_ids=None):
        raise NotImplementedError
