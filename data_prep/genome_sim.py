"""A synthetic two-species genome built from what real (human, gene-proximal) DNA contains, for the quickstart.

The design follows published composition, not the quickstart's results (the fractions are the human genome's; the
paper trains on fragments within 5 kb of a gene, so genes are denser here than genome-wide):
- background: 41% GC with CpG depleted to ~1/4 of expectation the way methylated CpG decays (CG -> TG / CA);
- genes on either strand: a promoter with a CpG island (60% of genes) and a TATA box 25-35 bp before the TSS
  (~25% of genes), exons whose coding part is codons drawn from a fixed codon usage (period-3 composition), introns
  opening with the donor consensus (MAG|GTRAGT) and closing with a branch point, a polypyrimidine tract and the
  acceptor (YAG|G), and an AATAAA polyadenylation signal in the last exon;
- interspersed repeat families at the human genome's shares (Alu-like SINE 10%, MIR-like old SINE 2.5%, L1-like LINE
  16% with 5'-truncated copies, LTR 8%, DNA transposon with terminal inverted repeats 3%), each copy diverged from its
  family consensus by its age (substitutions and small indels), in either orientation, soft-masked (lower case, as
  RepeatMasker writes them);
- simple repeats and low-complexity tracts (microsatellites of 1-6 bp units, poly-A/T; ~1.5%), also soft-masked;
- assembly gaps (N runs) and isolated N's;
- a second species derived from the first by ~1.2% substitutions (transitions twice as likely as transversions) and
  small indels, the human-chimp distance.

Added for issue 17 (the shares below were fixed from the literature before any model was trained on them; they are
rounded from the papers' abstracts and reviews, not re-derived from their tables):
- Alu subfamilies by age: the 10% of Alu is AluJ (oldest, 1.5%, 12-20% from its consensus), AluS (6%, 5-12%) and
  AluY (youngest, ~1/4 of Alus: 2.5%, 2-5%); each subfamily's consensus is its parent's with a few % of diagnostic
  changes (Batzer & Deininger 2002, Nat Rev Genet; Lander et al. 2001);
- satellite arrays, ~6% of a complete genome (T2T-CHM13: Nurk et al. 2022, Altemose et al. 2022, Science), as one
  peri/centromeric block per chromosome away from its ends: alpha satellite ~3% (171-bp monomers ~20-35% different
  from one another, organised into chromosome-specific higher-order repeats of 4-16 monomers whose copies are
  >97% identical: 1-3% here) and human satellites 2/3 ~3% (tandem CATTC-like pentamers, ~10% varied), soft-masked;
- segmental duplications: copies >= 1 kb at >= 90% identity, ~5% of GRCh38 (Bailey et al. 2002, Science; ~7% of
  CHM13, Vollger et al. 2022), mostly intrachromosomal (2/3 here) and enriched near genes (placed next to a gene
  here); 1-20 kb (log-uniform), 0.5-10% diverged (substitutions and small indels);
- tandem gene-family duplications: ~14% of human genes lie in tandem arrays (Shoja & Zhang 2006, Mol Biol Evol);
  here an array is a gene followed by 1-3 copies of itself (same strand, 2-20% diverged, 1-5 kb apart).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_COMPLEMENT = bytes.maketrans(b"ACGTNacgtn", b"TGCANtgcan")
_TRANSITION = bytes.maketrans(b"ACGTacgt", b"GTACgtac")
STOP_CODONS = (b"TAA", b"TAG", b"TGA")


@dataclass(frozen=True)
class RepeatFamily:
    name: str
    length: int  # consensus length
    fraction: float  # share of the genome covered by its copies
    divergence: Tuple[float, float]  # per-copy divergence from the consensus, uniform in this range
    gc: float = 0.41
    poly_a_tail: bool = False  # retrotransposons (SINE, LINE) end in an A-rich tail
    truncate_5prime: bool = False  # LINE copies are mostly 5'-truncated: they keep a 3' piece of the consensus
    inverted_ends: int = 0  # DNA transposons: terminal inverted repeats of this length
    parent: str = ""  # a subfamily: its consensus is the parent family's with parent_divergence of changes
    parent_divergence: float = 0.0


# Human genome shares (Lander et al. 2001; RepeatMasker summaries of GRCh38); consensus lengths shortened for LINE.
HUMAN_REPEATS = (
    RepeatFamily("SINE/AluJ", 300, 0.015, (0.12, 0.20), gc=0.55, poly_a_tail=True),
    RepeatFamily("SINE/AluS", 300, 0.060, (0.05, 0.12), gc=0.55, poly_a_tail=True, parent="SINE/AluJ",
                 parent_divergence=0.05),
    RepeatFamily("SINE/AluY", 300, 0.025, (0.02, 0.05), gc=0.55, poly_a_tail=True, parent="SINE/AluS",
                 parent_divergence=0.02),
    RepeatFamily("SINE/MIR", 260, 0.025, (0.20, 0.30), gc=0.48),
    RepeatFamily("LINE/L1", 3000, 0.16, (0.03, 0.25), gc=0.40, poly_a_tail=True, truncate_5prime=True),
    RepeatFamily("LTR/ERV", 450, 0.08, (0.05, 0.20), gc=0.45),
    RepeatFamily("DNA/TcMar", 250, 0.03, (0.15, 0.25), gc=0.40, inverted_ends=25),
)
SIMPLE_REPEAT_FRACTION = 0.010  # microsatellites (TRF)
LOW_COMPLEXITY_FRACTION = 0.005  # poly-A/T and purine/pyrimidine-rich tracts (dust)
ALPHA_MONOMER = 171  # bp
HSAT_UNIT = b"CATTC"


@dataclass(frozen=True)
class GenomeDesign:
    gc: float = 0.41
    cpg_ratio: float = 0.25  # observed / expected CpG in bulk DNA
    gene_gap: Tuple[int, int] = (3_000, 12_000)  # intergenic distance between genes
    exons: Tuple[int, int] = (3, 8)
    exon_len: Tuple[int, int] = (90, 240)
    intron_len: Tuple[int, int] = (250, 2_500)
    cpg_island_share: float = 0.6
    tata_share: float = 0.25
    repeats: Tuple[RepeatFamily, ...] = HUMAN_REPEATS
    gaps_per_chrom: int = 2
    gap_len: Tuple[int, int] = (150, 800)
    substitutions: float = 0.012  # second species vs first
    indels: float = 0.0015
    alpha_satellite_share: float = 0.03  # of each chromosome, in its centromeric block
    alpha_hor_monomers: Tuple[int, int] = (4, 17)  # monomers per higher-order repeat (upper bound exclusive)
    alpha_monomer_divergence: Tuple[float, float] = (0.10, 0.20)  # each HOR monomer from the family consensus
    alpha_hor_divergence: Tuple[float, float] = (0.01, 0.03)  # each HOR copy from the chromosome's HOR
    hsat_share: float = 0.03  # CATTC-like human satellite 2/3 arrays, flanking the alpha array
    hsat_divergence: float = 0.10
    segdup_share: float = 0.05
    segdup_len: Tuple[int, int] = (1_000, 20_000)  # log-uniform
    segdup_divergence: Tuple[float, float] = (0.005, 0.10)
    segdup_intrachromosomal: float = 2 / 3
    tandem_gene_share: float = 0.14  # share of genes that belong to a tandem array
    tandem_copies: Tuple[int, int] = (1, 4)  # copies after the first gene of an array (upper bound exclusive)
    tandem_divergence: Tuple[float, float] = (0.02, 0.20)
    tandem_spacing: Tuple[int, int] = (1_000, 5_000)


def _bases(rng: np.random.Generator, n: int, gc: float) -> np.ndarray:
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return BASES[rng.choice(4, size=n, p=p)]


def _deplete_cpg(rng: np.random.Generator, seq: np.ndarray, keep: float) -> np.ndarray:
    """Methylated CpG decays by deamination: CG -> TG or CA; keep ~`keep` of them (two passes catch new ones)."""
    for _ in range(2):
        at = np.flatnonzero((seq[:-1] == ord("C")) & (seq[1:] == ord("G")))
        at = at[rng.random(len(at)) > keep]
        to_t = rng.random(len(at)) < 0.5
        seq[at[to_t]] = ord("T")
        seq[at[~to_t] + 1] = ord("A")
    return seq


def background(rng: np.random.Generator, n: int, design: GenomeDesign, gc: float = None,
               cpg_ratio: float = None) -> bytes:
    seq = _bases(rng, n, design.gc if gc is None else gc)
    return _deplete_cpg(rng, seq, design.cpg_ratio if cpg_ratio is None else cpg_ratio).tobytes()


def reverse_complement(seq: bytes) -> bytes:
    return seq.translate(_COMPLEMENT)[::-1]


def _either_strand(rng: np.random.Generator, seq: bytes) -> Tuple[bytes, str]:
    """(seq as it reads on a strand drawn at random, that strand): an insertion lands in either orientation."""
    strand = "-" if rng.random() < 0.5 else "+"
    return (seq if strand == "+" else reverse_complement(seq)), strand


def _pwm_sample(rng: np.random.Generator, columns: List[Dict[str, float]]) -> bytes:
    """One instance of a motif given per-position base probabilities (the motif's natural variation)."""
    out = bytearray()
    for column in columns:
        letters, weights = zip(*column.items())
        out.append(ord(letters[rng.choice(len(letters), p=np.asarray(weights) / sum(weights))]))
    return bytes(out)


def _c(**weights: float) -> Dict[str, float]:
    return weights


# Consensus frequencies (rounded) of human splice sites and core promoter elements.
DONOR = [_c(A=.35, C=.35, G=.18, T=.12), _c(A=.62, C=.11, G=.12, T=.15), _c(A=.09, C=.03, G=.80, T=.08),
         _c(G=1.0), _c(T=1.0), _c(A=.60, G=.36, C=.02, T=.02), _c(A=.70, C=.08, G=.12, T=.10),
         _c(A=.08, C=.05, G=.80, T=.07), _c(A=.16, C=.16, G=.20, T=.48)]  # MAG|GTRAGT
BRANCH = [_c(C=.7, T=.3), _c(T=1.0), _c(A=.6, G=.4), _c(A=1.0), _c(C=.6, T=.4)]  # CTRAY
ACCEPTOR = [_c(C=.75, T=.25), _c(A=1.0), _c(G=1.0), _c(G=.5, A=.25, C=.15, T=.1)]  # YAG|G
TATA = [_c(T=1.0), _c(A=1.0), _c(T=1.0), _c(A=1.0), _c(A=.7, T=.3), _c(A=1.0), _c(A=.6, T=.4)]  # TATAWAW
POLY_A_SIGNAL = b"AATAAA"


@dataclass(frozen=True)
class Feature:
    """An annotated element, 0-based half-open on its sequence."""

    start: int
    end: int
    kind: str  # GFF type: gene, exon, TATA_box, splice_donor, splice_acceptor, polyA_signal, repeat, ...
    strand: str = "+"
    name: str = ""


class Track:
    """Sequence pieces joined left to right, with their features in the joined coordinates."""

    def __init__(self):
        self.parts: List[bytes] = []
        self.features: List[Feature] = []
        self.length = 0

    def add(self, seq: bytes, kind: str = "", strand: str = "+", name: str = "", features=()) -> "Track":
        """Append seq; kind: a feature over all of it; features: ones relative to its start."""
        if kind:
            self.features.append(Feature(self.length, self.length + len(seq), kind, strand, name))
        self.features += [Feature(f.start + self.length, f.end + self.length, f.kind, f.strand, f.name)
                          for f in features]
        self.parts.append(seq)
        self.length += len(seq)
        return self

    def extend(self, other: "Track") -> "Track":
        return self.add(other.seq(), features=other.features)

    def seq(self) -> bytes:
        return b"".join(self.parts)

    def reverse_complement(self) -> "Track":
        flip = {"+": "-", "-": "+"}
        out = Track()
        out.add(reverse_complement(self.seq()), features=[
            Feature(self.length - f.end, self.length - f.start, f.kind, flip.get(f.strand, f.strand), f.name)
            for f in self.features])
        return out


class _Builder:
    """Writes one chromosome left to right; repeats and simple repeats are lower case (soft-masked)."""

    def __init__(self, rng: np.random.Generator, design: GenomeDesign, codon_usage: np.ndarray, codons: List[bytes],
                 consensus: Dict[str, bytes]):
        self.rng, self.design, self.consensus = rng, design, consensus
        self.codon_usage, self.codons = codon_usage, codons
        self.finished: List[bytes] = []  # earlier chromosomes: sources of interchromosomal duplications
        self.kinds = [(f.fraction, self.mean_copy_len(f), f) for f in design.repeats]
        self.kinds += [(SIMPLE_REPEAT_FRACTION, 39.0, "simple"), (LOW_COMPLEXITY_FRACTION, 40.0, "low")]
        self.kinds.append((1.0 - sum(k[0] for k in self.kinds), 225.0, "background"))
        weights = np.array([share / mean for share, mean, _ in self.kinds])
        self.kind_weights = weights / weights.sum()

    def coding(self, n_codons: int, first: bool, last: bool) -> bytes:
        picked = self.rng.choice(len(self.codons), size=n_codons, p=self.codon_usage)
        body = b"".join(self.codons[i] for i in picked)
        if first:
            body = b"ATG" + body[3:]
        if last:
            body = body[:-3] + STOP_CODONS[int(self.rng.integers(0, 3))]
        return body

    def intron(self) -> Track:
        """GTRAGT (the exon before supplies MAG), filler, branch point, polypyrimidine tract, YAG."""
        d, rng = self.design, self.rng
        tract = BASES[[1, 3]][rng.integers(0, 2, int(rng.integers(12, 20)))].tobytes()
        branch, spacer = _pwm_sample(rng, BRANCH), background(rng, int(rng.integers(15, 35)), d)
        acceptor, donor = tract + _pwm_sample(rng, ACCEPTOR)[:3], _pwm_sample(rng, DONOR)[3:]
        t = Track().add(donor).extend(self.filler(int(rng.integers(*d.intron_len))))
        return t.add(branch, kind="branch_point").add(spacer).add(acceptor, kind="splice_acceptor")

    def gene(self) -> Track:
        d, rng = self.design, self.rng
        promoter = bytearray(background(rng, 600, d, gc=0.65, cpg_ratio=0.8) if rng.random() < d.cpg_island_share
                             else background(rng, 600, d))
        tata = []
        if rng.random() < d.tata_share:
            at = 600 - int(rng.integers(25, 36))
            promoter[at:at + len(TATA)] = _pwm_sample(rng, TATA)
            tata = [Feature(at, at + len(TATA), "TATA_box")]
        n_exons = int(rng.integers(*d.exons))
        body = Track().add(background(rng, int(rng.integers(40, 120)), d, gc=0.55), kind="five_prime_UTR")
        for i in range(n_exons):
            n_codons = max(2, int(rng.integers(*d.exon_len)) // 3)
            exon = self.coding(n_codons, first=i == 0, last=i == n_exons - 1)
            if i < n_exons - 1:
                exon = exon[:-3] + _pwm_sample(rng, DONOR)[:3]  # exon end: MAG
                body.add(exon, kind="exon")
                intron = self.intron()
                body.add(b"", features=[Feature(-3, 6, "splice_donor")]).extend(intron)
            else:
                utr = bytearray(background(rng, int(rng.integers(200, 600)), d))
                utr[-30:-24] = POLY_A_SIGNAL
                body.add(exon, kind="exon").add(bytes(utr), kind="three_prime_UTR",
                                                features=[Feature(len(utr) - 30, len(utr) - 24, "polyA_signal")])
        gene = Track().add(bytes(promoter), kind="promoter", features=tata)
        gene.add(b"", features=[Feature(0, body.length, "gene")]).extend(body)
        return gene if rng.random() < 0.5 else gene.reverse_complement()

    @staticmethod
    def mean_copy_len(family: RepeatFamily) -> float:
        return family.length * (0.3 if family.truncate_5prime else 1.0)

    def repeat_copy(self, family: RepeatFamily) -> Track:
        rng, seq = self.rng, self.consensus[family.name]
        if family.truncate_5prime:  # most LINE copies keep only a few hundred bp of the 3' end
            keep = int(min(family.length, rng.exponential(0.3 * family.length) + 100))
            seq = seq[-keep:]
        seq = mutate(rng, seq, float(rng.uniform(*family.divergence)), indels=0.1)
        if family.poly_a_tail:
            seq += b"A" * int(rng.integers(8, 30))
        seq, strand = _either_strand(rng, seq)
        return Track().add(seq.lower(), kind="repeat", strand=strand, name=family.name)

    def simple_repeat(self) -> Track:
        rng = self.rng
        unit = bytes(BASES[rng.integers(0, 4, int(rng.choice([1, 2, 3, 4, 5, 6], p=[.35, .3, .1, .15, .05, .05])))])
        tract = (unit * 60)[:int(rng.integers(18, 60))]
        return Track().add(mutate(rng, tract, 0.03, indels=0.0).lower(), kind="microsatellite",
                           name=f"({unit.decode()})n")

    def low_complexity(self) -> Track:
        """Poly-A or poly-T (70%), else a purine- or pyrimidine-only tract."""
        rng = self.rng
        n = int(rng.integers(20, 60))
        if rng.random() < 0.7:
            base = b"A" if rng.random() < 0.5 else b"T"
            tract, name = base * n, f"poly-{base.decode()}"
        else:
            pool = BASES[[0, 2]] if rng.random() < 0.5 else BASES[[1, 3]]
            tract, name = pool[rng.integers(0, 2, n)].tobytes(), "purine-rich" if pool[0] == ord("A") else \
                "pyrimidine-rich"
        return Track().add(mutate(rng, tract, 0.05, indels=0.0).lower(), kind="low_complexity", name=name)

    def filler(self, length: int) -> Track:
        """Intergenic or intronic sequence: pieces drawn so each kind covers its genome share (piece probability =
        share / mean piece length): repeat copies, simple repeats, low-complexity tracts, background."""
        kinds = self.kinds
        out = Track()
        while out.length < length:
            kind = kinds[int(self.rng.choice(len(kinds), p=self.kind_weights))][2]
            if isinstance(kind, RepeatFamily):
                out.extend(self.repeat_copy(kind))
            elif kind == "simple":
                out.extend(self.simple_repeat())
            elif kind == "low":
                out.extend(self.low_complexity())
            else:
                out.add(background(self.rng, int(self.rng.integers(50, 400)), self.design))
        return out

    def satellite_block(self, length: int) -> Track:
        """A centromere: an alpha-satellite array of this chromosome's higher-order repeat between two human
        satellite (CATTC-like) arrays, all soft-masked."""
        d = self.design
        hsat = int(length * d.hsat_share / (d.hsat_share + d.alpha_satellite_share))
        out = self.hsat_array(hsat // 2)
        out.extend(self.alpha_array(length - hsat))
        return out.extend(self.hsat_array(hsat - hsat // 2))

    def alpha_array(self, length: int) -> Track:
        """Copies (1-3% diverged) of a higher-order repeat made of 4-16 diverged 171-bp monomers."""
        d, rng = self.design, self.rng
        monomer = self.consensus["alpha"]
        hor = b"".join(mutate(rng, monomer, float(rng.uniform(*d.alpha_monomer_divergence)), indels=0.0)
                       for _ in range(int(rng.integers(*d.alpha_hor_monomers))))
        copies = -(-length // len(hor))
        array = b"".join(mutate(rng, hor, float(rng.uniform(*d.alpha_hor_divergence)), indels=0.1)
                         for _ in range(copies))[:length]
        array, strand = _either_strand(rng, array)
        return Track().add(array.lower(), kind="satellite", strand=strand,
                           name=f"alpha-HOR-{len(hor) // ALPHA_MONOMER}mer")

    def hsat_array(self, length: int) -> Track:
        array = mutate(self.rng, (HSAT_UNIT * (length // len(HSAT_UNIT) + 1))[:length], self.design.hsat_divergence,
                       indels=0.1)
        return Track().add(array.lower(), kind="satellite", name="HSat2/3")

    def segmental_duplication(self, chromosome_so_far: bytes) -> Track:
        """A diverged copy, in either orientation, of a 1-20 kb piece of this chromosome (2/3) or an earlier one;
        nothing when no source is long enough yet."""
        d, rng = self.design, self.rng
        length = int(np.exp(rng.uniform(np.log(d.segdup_len[0]), np.log(d.segdup_len[1]))))
        pools = [chromosome_so_far, b"".join(self.finished)]
        if rng.random() >= d.segdup_intrachromosomal:
            pools.reverse()
        source = next((pool for pool in pools if len(pool) >= 2 * length), None)
        if source is None:
            return Track()
        start = int(rng.integers(0, len(source) - length))
        copy = mutate(rng, source[start:start + length], float(rng.uniform(*d.segdup_divergence)), indels=0.1)
        copy, strand = _either_strand(rng, copy)
        return Track().add(copy, kind="segmental_duplication", strand=strand)

    def tandem_array_copies(self) -> int:
        """How many copies follow this gene: arrays start with the probability that puts tandem_gene_share of all
        genes in arrays (an array holds 1 + mean copies genes)."""
        d = self.design
        size = 1 + (d.tandem_copies[0] + d.tandem_copies[1] - 1) / 2
        start = d.tandem_gene_share / (size - d.tandem_gene_share * (size - 1))
        return int(self.rng.integers(*d.tandem_copies)) if self.rng.random() < start else 0

    def gene_or_array(self) -> Track:
        """A gene, sometimes followed by diverged copies of itself on the same strand (a tandem gene family)."""
        d, rng = self.design, self.rng
        gene = self.gene()
        strand = next(f.strand for f in gene.features if f.kind == "gene")
        out = Track().extend(gene)
        for _ in range(self.tandem_array_copies()):
            copy = mutate(rng, gene.seq(), float(rng.uniform(*d.tandem_divergence)), indels=0.1)
            out.extend(self.filler(int(rng.integers(*d.tandem_spacing))))
            out.add(copy, kind="gene_paralog", strand=strand)
        return out

    def chromosome(self, length: int) -> Tuple[bytes, List[Feature]]:
        """Genes (some in tandem arrays, segmental duplications next to some) separated by design.gene_gap bases
        of filler, a satellite block 30-70% along, then assembly gaps and a few isolated N's."""
        d, rng = self.design, self.rng
        satellites = int(length * (d.alpha_satellite_share + d.hsat_share))
        centromere_at = int(length * rng.uniform(0.3, 0.7))
        out = self.filler(int(rng.integers(0, 3000))).extend(self.gene_or_array())
        duplicated = 0
        while out.length < length:
            if satellites and out.length >= centromere_at:
                out.extend(self.satellite_block(satellites))
                satellites = 0
            out.extend(self.filler(int(rng.integers(*d.gene_gap))))
            if duplicated < d.segdup_share * out.length:
                piece = self.segmental_duplication(out.seq())
                duplicated += piece.length
                out.extend(piece)
            out.extend(self.gene_or_array())
        seq = bytearray(out.seq()[:length])
        features = [f for f in out.features if f.end <= length]
        for _ in range(d.gaps_per_chrom):
            run = int(rng.integers(*d.gap_len))
            start = int(rng.integers(0, length - run))
            seq[start:start + run] = b"N" * run
            features = [f for f in features if f.end <= start or f.start >= start + run]
            features.append(Feature(start, start + run, "gap"))
        for at in rng.integers(0, length, 3):
            seq[int(at)] = ord("N")
        self.finished.append(bytes(seq))
        return bytes(seq), sorted(features, key=lambda f: (f.start, -f.end))


def mutate(rng: np.random.Generator, seq: bytes, rate: float, indels: float) -> bytes:
    """Point substitutions at `rate` (transitions 2:1 over transversions) plus small indels at rate*indels."""
    arr = np.frombuffer(seq, dtype=np.uint8).copy()
    hit = np.flatnonzero(rng.random(len(arr)) < rate)
    transition = rng.random(len(hit)) < 2 / 3
    upper = arr[hit] & 0xDF  # the case bit is restored below
    lower = arr[hit] != upper
    new = np.frombuffer(upper.tobytes().translate(_TRANSITION), dtype=np.uint8).copy()
    pick = rng.integers(0, 4, len(hit)) % 2  # which of the two transversions
    purine = (upper == ord("A")) | (upper == ord("G"))
    transversion = np.where(purine, BASES[[1, 3]][pick], BASES[[0, 2]][pick])  # A/G -> C/T, C/T -> A/G
    new = np.where(transition, new, transversion)
    known = np.isin(upper, BASES)
    arr[hit[known]] = np.where(lower[known], new[known] | 0x20, new[known])
    if indels:
        n = int(rng.binomial(len(arr), rate * indels))
        if n:
            cut = np.sort(rng.choice(len(arr), size=min(n, len(arr)), replace=False))
            deletion = rng.random(len(cut)) < 0.5
            arr = np.delete(arr, cut[deletion])
            keep = cut[~deletion] - np.searchsorted(cut[deletion], cut[~deletion])
            arr = np.insert(arr, np.clip(keep, 0, len(arr)), BASES[rng.integers(0, 4, len(keep))])
    return arr.tobytes()


def _codon_table(rng: np.random.Generator) -> Tuple[List[bytes], np.ndarray]:
    """The 61 sense codons with a skewed usage (some codons 5-10x more frequent than their synonyms, as in
    human coding sequence), drawn once per genome so both species share it."""
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
    codons = [c.encode() for c in codons if c.encode() not in STOP_CODONS]
    usage = rng.dirichlet(np.full(len(codons), 1.0))
    return codons, usage


def make_consensus(rng: np.random.Generator, family: RepeatFamily, cpg_ratio: float,
                   made: Dict[str, bytes]) -> bytes:
    """A family's consensus: random (human-like GC and CpG) or, for a subfamily, its parent's with changes."""
    if family.parent:
        return mutate(rng, made[family.parent], family.parent_divergence, indels=0.0)
    seq = bytearray(_deplete_cpg(rng, _bases(rng, family.length, family.gc), cpg_ratio).tobytes())
    if family.inverted_ends:
        k = family.inverted_ends
        seq[-k:] = reverse_complement(bytes(seq[:k]))
    if family.name.startswith("SINE/Alu"):  # two monomers joined by an A-rich linker
        mid = family.length // 2
        seq[mid - 5:mid + 5] = b"AAAAATACAA"[:10]
    return bytes(seq)


def simulate_species(seed: int, chromosomes: Dict[str, int], design: GenomeDesign = GenomeDesign()
                     ) -> Tuple[Dict[str, bytes], Dict[str, bytes], Dict[str, List[Feature]]]:
    """(first species, second species, the first's annotation): chromosome name -> sequence / features. The second
    is the first with design.substitutions point substitutions and design.indels small indels per base."""
    rng = np.random.default_rng(seed)
    codons, usage = _codon_table(rng)
    consensus: Dict[str, bytes] = {}
    for family in design.repeats:
        consensus[family.name] = make_consensus(rng, family, design.cpg_ratio, consensus)
    consensus["alpha"] = _bases(rng, ALPHA_MONOMER, 0.38).tobytes()  # AT-rich, like alpha satellite
    builder = _Builder(rng, design, usage, codons, consensus)
    built = {name: builder.chromosome(length) for name, length in chromosomes.items()}
    first = {name: seq for name, (seq, _) in built.items()}
    second = {name: mutate(rng, seq, design.substitutions, indels=design.indels / design.substitutions)
              for name, seq in first.items()}
    return first, second, {name: features for name, (_, features) in built.items()}


def gff3(features: Dict[str, List[Feature]], source: str = "genome_sim") -> str:
    """GFF3 text (1-based, inclusive) of simulate_species' annotation."""
    lines = ["##gff-version 3"]
    for chrom, items in features.items():
        for number, f in enumerate(items):
            attributes = f"ID={chrom}.{f.kind}.{number}" + (f";Name={f.name}" if f.name else "")
            lines.append(f"{chrom}\t{source}\t{f.kind}\t{f.start + 1}\t{f.end}\t.\t{f.strand}\t.\t{attributes}")
    return "\n".join(lines) + "\n"


def plant(seq: bytes, motif: bytes, every: int, rng: np.random.Generator) -> Tuple[bytes, List[int]]:
    """`motif` written about every `every` bases (jittered), alternating strands; returns (sequence, starts)."""
    arr = bytearray(seq)
    starts = []
    position = every // 2
    while position + len(motif) < len(arr):
        copy = motif if len(starts) % 2 == 0 else reverse_complement(motif)
        arr[position:position + len(motif)] = copy
        starts.append(position)
        position += every + int(rng.integers(-every // 4, every // 4 + 1))
    return bytes(arr), starts
