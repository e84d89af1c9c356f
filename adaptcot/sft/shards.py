"""Each Ray Train worker reads its own share of the training order and only the token rows that share needs.

The order (`order.training_order`) is one sequence for the whole run; the Trainer reads it sequentially and
accelerate gives micro-batch k to rank k mod N. So rank r trains on micro-batches r, r + N, r + 2N, ... up to the
run's optimizer steps (the Trainer stops there; the rest of the order is never read). The driver writes rank r's
positions into `rank-<r>.parquet` (token rows, prompt lengths, kinds: no ids), and the worker reads from the
tokenised files only the rows it names (`ShardDataset`). Memory per worker is its share, not the dataset times the
epochs.

`ShardDataset` has the global length and answers only the indices of its own micro-batches: if accelerate ever
shards differently, the worker stops with `ShardError` instead of training on the wrong examples.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adaptcot.common import storage
from adaptcot.sft.order import KIND_CODES, optimizer_steps
from adaptcot.sft.train_config import TrainConfig

SHARD_COLUMNS = ["token_row", "prompt_tokens", "kind"]


class ShardError(RuntimeError):
    """A worker was asked for an example outside its share of the order."""


def rank_positions(n_examples: int, cfg: TrainConfig, rank: int) -> np.ndarray:
    """Positions in the run's order that `rank` trains on, in its order."""
    batch, world = cfg.per_device_batch_size, cfg.num_workers
    micro_batches = optimizer_steps(n_examples, cfg) * cfg.grad_accum
    starts = (np.arange(micro_batches, dtype=np.int64) * world + rank) * batch
    return (starts[:, None] + np.arange(batch, dtype=np.int64)).ravel()


def shard_name(rank: int) -> str:
    return f"rank-{rank:05d}.parquet"


def write_shards(order: pa.Table, cfg: TrainConfig, directory: str) -> list[int]:
    """One file per rank under `directory` (a path or URI); the number of examples of each."""
    fs, path = storage.resolve(directory)
    fs.create_dir(path, recursive=True)
    sizes = []
    for rank in range(cfg.num_workers):
        share = order.take(pa.array(rank_positions(order.num_rows, cfg, rank))).select(SHARD_COLUMNS)
        pq.write_table(share, f"{path}/{shard_name(rank)}", filesystem=fs)
        sizes.append(share.num_rows)
    return sizes


def read_token_rows(token_files: list[str], rows: np.ndarray) -> pa.ChunkedArray:
    """`input_ids` of the given rows of the tokenised files (rows numbered across the files in this order), read
    file by file so only the wanted rows are held."""
    wanted = np.unique(rows)
    pieces, offset = [], 0
    for uri in token_files:
        fs, path = storage.resolve(uri)
        size = pq.ParquetFile(path, filesystem=fs).metadata.num_rows
        mine = wanted[(wanted >= offset) & (wanted < offset + size)] - offset
        if len(mine):
            ids = pq.read_table(path, filesystem=fs, columns=["input_ids"])["input_ids"]
            pieces.append(ids.take(pa.array(mine)))
        offset += size
    found = pa.chunked_array([c for p in pieces for c in p.chunks], pa.list_(pa.int32()))
    position = np.searchsorted(wanted, rows)
    return found.take(pa.array(position))


class ShardDataset:
    """Map-style torch dataset over one rank's share: global length, own micro-batches only (see module doc)."""

    def __init__(self, shard_uri: str, token_files: list[str], rank: int, world: int, batch: int):
        fs, path = storage.resolve(shard_uri)
        share = pq.read_table(path, filesystem=fs)
        ids = read_token_rows(token_files, share["token_row"].to_numpy()).combine_chunks()
        self.offsets, self.values = ids.offsets.to_numpy(), ids.values.to_numpy()
        self.prompt_tokens = share["prompt_tokens"].to_numpy()
        self.kinds = np.array([KIND_CODES[k] for k in share["kind"].to_pylist()], dtype=np.int64)
        self.rank, self.world, self.batch = rank, world, batch

    def __len__(self) -> int:
        return len(self.prompt_tokens) * self.world

    def local(self, i: int) -> int:
        micro_batch, within = divmod(i, self.batch)
        if micro_batch % self.world != self.rank:
            raise ShardError(f"rank {self.rank} was asked for example {i} (micro-batch {micro_batch}), which belongs "
                             f"to rank {micro_batch % self.world}: the data loader shards the order differently from "
                             f"`shards.rank_positions`")
        return (micro_batch // self.world) * self.batch + within

    def __getitem__(self, i: int) -> dict:
        j = self.local(i)
        return {"input_ids": self.values[self.offsets[j]:self.offsets[j + 1]],
                "prompt_tokens": int(self.prompt_tokens[j]), "kind": int(self.kinds[j])}
