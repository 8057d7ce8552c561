"""Using trained models: HF export, sequence and variant scoring, embeddings and probes on tiny runs trained here.

Two runs, shared by every test of this module: a dense GQA model with a Gengram layer (one process), and an MoE +
MLA model with a Gengram layer trained by two tensor-parallel processes (TP=2), so the export reads a
sharded checkpoint. References: the megatron-core model's own logits, and hand computations from logits.
"""
import json
import math

import numpy as np
import pytest
import torch

import warm_python
from train_runs import make_pack, train_command, training_env

SHORT = ["train.max_steps=2", "checkpoint.every=2", "train.eval_every=2"]
MOE_MLA = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32", "model.attention=mla",
           "model.mla.q_lora_rank=24", "model.mla.kv_lora_rank=16", "model.mla.qk_head_dim=8",
           "model.mla.qk_pos_emb_head_dim=8", "model.mla.v_head_dim=16"]


def train(command):
    result = warm_python.run(command, capture_output=True, text=True, timeout=600, env=training_env())
    assert result.returncode == 0, result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    pack = make_pack(root / "data")
    dense = root / "dense"
    train(train_command(pack, dense, *SHORT))
    moe = root / "moe-tp2"
    tp2 = ["parallel.tensor=2", "parallel.sequence_parallel=true"]  # megatron: MoE with TP needs SP
    two_ranks = warm_python.run_ranks(train_command(pack, moe, *tp2, *SHORT, *MOE_MLA), 2, timeout=600,
                                      env=training_env())
    assert two_ranks.returncode == 0, two_ranks.stderr[-5000:]
    assert "TP 2" in two_ranks.stderr
    return {"root": root, "pack": pack, "dense": dense, "moe-tp2": moe}


def megatron_logits(run_dir, ids):
    """The reference: the megatron-core model built from the checkpoint's config, weights from dist_checkpointing."""
    from nucleotron.infer.checkpoint import build_model, load_weights, read_checkpoint, single_process_megatron

    ckpt = read_checkpoint(str(run_dir))
    with single_process_megatron(ckpt.cfg):
        model = build_model(ckpt.cfg, ckpt.vocab)
        load_weights(model, ckpt.directory)
        with torch.no_grad():
            return model.eval()(ids, torch.arange(ids.shape[1]).expand_as(ids), None)


def sample_ids(vocab, length=96, seed=0):
    """Two sequences of bases with an N and an EOD inside (Gengram skips k-mers across both)."""
    rng = np.random.default_rng(seed)
    bases = [vocab[b] for b in "ACGT"]
    ids = torch.tensor(rng.choice(bases, size=(2, length)))
    ids[0, 10], ids[1, 40] = vocab["N"], vocab["EOD"]
    return ids


@pytest.fixture(scope="module")
def exported(runs):
    from nucleotron.infer.export_hf import main

    out = {}
    for name in ("dense", "moe-tp2"):
        folder = runs["root"] / f"hf-{name}"
        assert main(["hf", str(runs[name]), str(folder), "--max-shard-size", "200KB"]) == 0
        out[name] = folder
    return out


@pytest.mark.parametrize("name", ["dense", "moe-tp2"])
def test_exported_hf_model_gives_megatron_logits(runs, exported, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nucleotron.data_prep.manifest import load_manifest

    vocab = load_manifest(str(runs["pack"])).vocab
    folder = exported[name]
    assert (folder / "model.safetensors.index.json").is_file(), "sharded above --max-shard-size"
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32).eval()
    ids = sample_ids(vocab)
    with torch.no_grad():
        logits = model(ids).logits
    reference = megatron_logits(runs[name], ids)
    assert logits.shape == reference.shape
    assert ((logits - reference).abs().max() / reference.abs().max()).item() <= 1e-5
    if name == "moe-tp2":
        assert model.config.num_experts == 4 and model.config.attention == "mla"
    assert model.config.gengram_layers == [2]

    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    assert tokenizer("ACGTNacgtr")["input_ids"] == [vocab[b] for b in "ACGTNACGTN"]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (vocab["EOD"], vocab["PAD"])


def log_prob(model, tokens):
    """Hand computation: sum_t log softmax(logits[t-1])[x_t] for one unpadded sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()
    return sum(torch.log_softmax(logits[t - 1], dim=-1)[tokens[t]].item() for t in range(1, len(tokens)))


@pytest.fixture(scope="module")
def hf_dense(exported):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(exported["dense"]), trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def genome(runs):
    rng = np.random.default_rng(5)
    chroms = {"chrA": "".join(rng.choice(list("ACGT"), 300)), "chrB": "".join(rng.choice(list("ACGT"), 80))}
    path = runs["root"] / "genome.fa"
    wrap = lambda seq: "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))  # noqa: E731
    path.write_text("".join(f">{name} test\n{wrap(seq)}" for name, seq in chroms.items()))
    return path, chroms


def test_variant_scores_equal_hand_computation(runs, hf_dense, genome, tmp_path):
    from nucleotron.infer.score import main

    fasta, chroms = genome
    a, b = chroms["chrA"], chroms["chrB"]
    variants = [("chrA", 150, a[149], "A" if a[149] != "A" else "C"),  # SNV
                ("chrA", 100, a[99:102], a[99]),                      # 2-base deletion
                ("chrB", 5, b[4], b[4] + "TT")]                       # insertion near the chromosome start
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n" +
                   "".join(f"{c}\t{p}\t.\t{r}\t{x}\n" for c, p, r, x in variants))
    out = tmp_path / "effects.tsv"
    window = 41
    assert main([str(runs["dense"]), "--vcf", str(vcf), "--reference", str(fasta), "--window", str(window),
                 "--out", str(out), "--batch-size", "3"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "chrom\tpos\tref\talt\tscore"
    vocab = json.loads((runs["root"] / "hf-dense" / "vocab.json").read_text())
    for line, (chrom, pos, ref, alt) in zip(lines[1:], variants):
        seq = chroms[chrom]
        start = max(0, pos - 1 - window // 2)
        left, right = seq[start:pos - 1], seq[pos - 1 + len(ref):start + window]
        ref_window, alt_window = left + ref + right, left + alt + right
        assert len(ref_window) == window
        expected = (log_prob(hf_dense, [vocab["<EOD>"]] + [vocab[b] for b in alt_window]) -
                    log_prob(hf_dense, [vocab["<EOD>"]] + [vocab[b] for b in ref_window]))
        fields = line.split("\t")
        assert fields[:4] == [chrom, str(pos), ref, alt]
        assert float(fields[4]) == pytest.approx(expected, abs=2e-4)


def test_sequence_bits_per_base_equal_hand_computation(runs, exported, hf_dense, tmp_path):
    from nucleotron.infer.score import main

    records = {"short": "ACGTTGCAACGGTN", "long": "ACGT" * 70}  # 280 bases: three windows of the 128-token model
    fasta = tmp_path / "seqs.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    out = tmp_path / "scores.tsv"
    assert main([str(exported["dense"]), "--sequences", str(fasta), "--out", str(out)]) == 0  # the HF folder path
    vocab = json.loads((runs["root"] / "hf-dense" / "vocab.json").read_text())
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    for (name, bases, total, bits), (key, seq) in zip(rows, records.items()):
        ids = [vocab[b] for b in seq]
        expected = sum(log_prob(hf_dense, [vocab["<EOD>"]] + ids[i:i + 127]) for i in range(0, len(ids), 127))
        assert (name, int(bases)) == (key, len(seq))
        assert float(total) == pytest.approx(expected, abs=2e-4)
        assert float(bits) == pytest.approx(-expected / len(seq) / math.log(2), rel=1e-5)


def test_bad_vcf_lines_are_reported_with_line_numbers(genome, tmp_path):
    from nucleotron.infer.sequences import InputError
    from nucleotron.infer.variants import Reference, collect_windows

    fasta, chroms = genome
    wrong = "A" if chroms["chrA"][9] != "A" else "C"
    vcf = tmp_path / "bad.vcf"
    vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\n"
                   f"chrA\t10\t.\t{wrong}\tG\n"        # line 2: REF does not match
                   "chrZ\t5\t.\tA\tG\n"                # line 3: chromosome missing
                   "chrA\t7\t.\tA\n"                   # line 4: malformed
                   f"chrA\t20\t.\t{chroms['chrA'][19]}\t<DEL>\n"  # line 5: symbolic allele
                   f"chrA\t30\t.\t{chroms['chrA'][29]}\tT,G\n")   # line 6: fine, two alleles
    with pytest.raises(InputError) as stop:
        collect_windows(str(vcf), Reference(str(fasta)), 41, "stop")
    assert str(stop.value) == (
        f"{vcf} line 2 (chrA:10 {wrong}>G): REF {wrong} does not match the reference "
        f"'{chroms['chrA'][9]}' at chrA:10 in {fasta} (wrong assembly or coordinates?); fix the input or pass "
        f"--on-error skip")
    variants, pairs, skipped = collect_windows(str(vcf), Reference(str(fasta)), 41, "skip")
    assert skipped == 4 and [(v.line, v.alt) for v in variants] == [(6, "T"), (6, "G")]
    for line in (3, 4, 5):  # the other messages, one file each in stop mode
        single = tmp_path / f"bad{line}.vcf"
        single.write_text(vcf.read_text().splitlines()[line - 1] + "\n")
        with pytest.raises(InputError) as stop:
            collect_windows(str(single), Reference(str(fasta)), 41, "stop")
        err = str(stop.value)
        assert f"{single} line 1" in err
        assert {3: "chromosome 'chrZ' is not in", 4: "malformed VCF line (4 tab-separated fields",
                5: "ALT '<DEL>' is not supported"}[line] in err


def test_embeddings_mean_and_per_position(runs, exported, hf_dense, tmp_path):
    import pyarrow.parquet as pq

    from nucleotron.infer.embed import main

    table = tmp_path / "seqs.tsv"
    table.write_text("id\tsequence\ns1\tACGTACGGTA\ns2\tTTGACNAC\n")
    vocab = json.loads((runs["root"] / "hf-dense" / "vocab.json").read_text())
    out = tmp_path / "emb.parquet"
    model = str(exported["dense"])
    assert main([model, "--sequences", str(table), "--layer", "2", "--out", str(out)]) == 0
    got = pq.read_table(out).to_pydict()
    assert got["id"] == ["s1", "s2"]
    for seq, vector in zip(["ACGTACGGTA", "TTGACNAC"], got["embedding"]):
        ids = torch.tensor([[vocab["<EOD>"]] + [vocab[b] for b in seq]])
        with torch.no_grad():
            states = hf_dense(ids, output_hidden_states=True).hidden_states
        np.testing.assert_allclose(vector, states[2][0, 1:].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    npy = tmp_path / "emb.npy"
    assert main([model, "--sequences", str(table), "--pool", "none", "--out", str(npy)]) == 2  # unequal lengths
    table.write_text("id\tsequence\ns1\tACGTACGG\ns2\tTTGACNAC\n")
    assert main([model, "--sequences", str(table), "--pool", "none", "--out", str(npy)]) == 0
    per_position = np.load(npy)
    assert per_position.shape == (2, 8, hf_dense.config.hidden_size)
    with torch.no_grad():
        final = hf_dense.model(torch.tensor([[vocab["<EOD>"]] + [vocab[b] for b in "TTGACNAC"]]))[0]
    np.testing.assert_allclose(per_position[1], final[0, 1:].numpy(), rtol=1e-5, atol=1e-6)


def planted_motif_table(path, n=160, length=96, seed=3):
    """Half the sequences carry a planted motif (twice); the label says which."""
    rng = np.random.default_rng(seed)
    motif = "TATAAAAGGCGCGC"
    rows = ["sequence,label"]
    for i in range(n):
        seq = list(rng.choice(list("ACGT"), length))
        label = i % 2
        if label:
            for start in rng.choice(length - len(motif), 2, replace=False):
                seq[start:start + len(motif)] = motif
        rows.append(f"{''.join(seq)[:length]},{label}")
    path.write_text("\n".join(rows) + "\n")


def test_probe_separates_planted_motif_above_shuffled_control(runs, exported, tmp_path):
    from nucleotron.infer.probe import main

    data = tmp_path / "motif.csv"
    planted_motif_table(data)
    out = tmp_path / "probe.json"
    assert main(["probe", str(exported["dense"]), "--train", str(data), "--out", str(out), "--folds", "3"]) == 0
    real = json.loads(out.read_text())
    lines = data.read_text().splitlines()
    labels = [line.rsplit(",", 1)[1] for line in lines[1:]]
    shuffled_labels = np.random.default_rng(0).permutation(labels)
    data.write_text("\n".join([lines[0]] + [f"{line.rsplit(',', 1)[0]},{label}"
                                             for line, label in zip(lines[1:], shuffled_labels)]) + "\n")
    assert main(["probe", str(exported["dense"]), "--train", str(data), "--out", str(out), "--folds", "3"]) == 0
    control = json.loads(out.read_text())
    assert real["metrics"]["auc"] > 0.85, real
    assert real["metrics"]["auc"] > control["metrics"]["auc"] + 0.25, (real["metrics"], control["metrics"])
    assert real["n_train"] + real["n_test"] == 160 and real["n_test"] == 32
    source = real["checkpoint"]["exported_from"]
    assert source["step"] == 2 and source["source"].endswith("step-00000002")
    assert set(real["metrics"]) == {"auc", "mcc", "accuracy"}
