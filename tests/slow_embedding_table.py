"""Embedding services whose table loads slowly or not at all, for the BMAS actor's start-up; the Ray workers
import them by name (tests/ on their PYTHONPATH), so that they subclass the service they import."""

import time

from mixed_r1_verl.verl_adapter import embedding_service

TABLE_LOAD_S = 15.0


class SlowTableService(embedding_service.EmbeddingService):
    """The service with a table that takes TABLE_LOAD_S to load (a large model's on a slow shared
    filesystem), kept on the CPU, as the machine may have no GPU."""

    def __init__(self, model: str, device: str):
        load = embedding_service.load_input_embeddings
        embedding_service.load_input_embeddings = lambda path: (time.sleep(TABLE_LOAD_S), load(path))[1]
        super().__init__(model, "cpu")


class FailingTableService(embedding_service.EmbeddingService):
    """The service with a table whose load fails as a GPU out of memory would, counting the loads tried."""

    def __init__(self, model: str, device: str):
        self.loads_tried = 0

        def load(path):
            self.loads_tried += 1
            raise MemoryError(f"cannot allocate the table of {path}")

        embedding_service.load_input_embeddings = load
        super().__init__(model, "cpu")

    def loads(self) -> int:
        return self.loads_tried
