"""Each training worker reads its own share of the order: the shares cover the run's micro-batches once, a worker
holds only its rows, and accelerate's own data-loader sharding asks each rank for exactly its share."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adaptcot.sft.order import training_order
from adaptcot.sft.shards import ShardDataset, ShardError, rank_positions, shard_name, write_shards
from adaptcot.sft.train_config import TrainConfig
from adaptcot.sft.trainer import OrderDataset


def tokens_in_files(tmp_path, n: int, per_file: int) -> tuple[pa.Table, list[str]]:
    """n token rows (record i's ids start with i), written over several files as Ray Data would."""
    rng = np.random.default_rng(0)
    ids = [[i] + rng.integers(1, 500, rng.integers(3, 30)).tolist() for i in range(n)]
    table = pa.table({"record_id": [f"r{i:04d}" for i in range(n)], "kind": ["cot"] * n,
                      "input_ids": pa.array(ids, pa.list_(pa.int32())), "n_tokens": [len(x) for x in ids],
                      "prompt_tokens": [2] * n, "token_row": list(range(n))})
    files = []
    for k, start in enumerate(range(0, n, per_file)):
        files.append(str(tmp_path / f"tokens-{k}.parquet"))
        pq.write_table(table.slice(start, per_file).select(["input_ids"]), files[-1])
    return table, files


@pytest.mark.parametrize("workers,batch,accum,max_steps", [(2, 4, 1, None), (3, 2, 2, None), (2, 4, 1, 3)])
def test_the_shares_cover_the_run_once_and_give_what_the_whole_order_gives(tmp_path, workers, batch, accum,
                                                                           max_steps):
    cfg = TrainConfig(model="m", num_workers=workers, per_device_batch_size=batch, grad_accum=accum, epochs=3,
                      max_steps=max_steps, batching="grouped")
    table, files = tokens_in_files(tmp_path, 37, per_file=10)
    order = training_order(table, cfg)
    whole = OrderDataset(order)  # the order with its ids, as one process would hold it
    sizes = write_shards(order, cfg, str(tmp_path / "shards"))
    steps = (order.num_rows // (batch * workers * accum)) if max_steps is None else max_steps
    assert sizes == [steps * accum * batch] * workers
    seen = []
    for rank in range(workers):
        share = ShardDataset(str(tmp_path / "shards" / shard_name(rank)), files, rank, workers, batch)
        assert len(share) == sizes[rank] * workers
        assert len(share.prompt_tokens) == sizes[rank] < order.num_rows  # only its own rows are held
        for i in rank_positions(order.num_rows, cfg, rank):
            np.testing.assert_array_equal(share[int(i)]["input_ids"], whole[int(i)]["input_ids"])
            seen.append(int(i))
        other = (rank + 1) % workers * batch
        with pytest.raises(ShardError, match=f"belongs to rank {(rank + 1) % workers}"):
            share[other]
    assert sorted(seen) == list(range(steps * accum * batch * workers))  # each position once, none beyond the run


def test_accelerates_data_loader_asks_each_rank_for_its_share_only(tmp_path):
    """The Trainer's data loader (sequential sampler, batches handed round-robin by accelerate) over a rank's
    ShardDataset: every index it asks for is the rank's, in the order `rank_positions` wrote."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader, SequentialSampler

    cfg = TrainConfig(model="m", num_workers=2, per_device_batch_size=4, epochs=2)
    table, files = tokens_in_files(tmp_path, 21, per_file=8)
    order = training_order(table, cfg)
    write_shards(order, cfg, str(tmp_path / "shards"))
    for rank in range(2):
        share = ShardDataset(str(tmp_path / "shards" / shard_name(rank)), files, rank, 2, 4)
        asked = []

        def collate(examples):
            return examples

        loader = DataLoader(share, batch_size=4, sampler=SequentialSampler(share), collate_fn=collate)
        sharded = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        for examples in sharded:  # a ShardError here: accelerate shards differently
            asked += [int(ex["input_ids"][0]) for ex in examples]
        expected = order.take(pa.array(rank_positions(order.num_rows, cfg, rank)))["token_row"].to_pylist()
        assert asked == expected
