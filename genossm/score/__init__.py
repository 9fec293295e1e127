"""``genossm score``: VCF/BCF + reference FASTA + model -> scored VCF (bgzipped, tabix-indexed)
and a table with one row per (record, ALT allele).

Per ALT allele, all in natural log (nats): ``GENOSSM_LLR``, ln P(alt haplotype) - ln P(ref
haplotype) for causal models, or the masked-LM log-ratio over the REF span for masked models;
``GENOSSM_COS`` / ``GENOSSM_L2``, the cosine and Euclidean distances between the mean final
hidden states over the REF and the ALT haplotype; ``GENOSSM_STATUS``, ``scored`` or why not.

The parts, in the order a record meets them:

- variants.py: the records and their text lines, ALT statuses, contig name resolution;
- haplotypes.py: statuses and flanks against the reference, the haplotype sequences;
- causal.py / masked.py: one strand's scores with a causal / masked-LM model;
- scorer.py: both strands averaged, distances, batching;
- output.py: the annotated line, header lines, table rows, summary;
- command.py: ``score_vcf``, the command.

These names are imported on first use (``__getattr__``), so that the commands built on the
light parts (split-calls and gather-scores, parts.py; genossm benchmark, which reads what
output.py and variants.py define) start without importing torch.
"""

import importlib

_LAZY = {"DEFAULT_BATCH_SIZE": "command", "DEFAULT_WINDOW": "command", "score_vcf": "command",
         "format_summary": "output"}

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_WINDOW", "format_summary", "score_vcf"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
