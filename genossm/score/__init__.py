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
"""

from genossm.score.command import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW, score_vcf
from genossm.score.output import format_summary

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_WINDOW", "format_summary", "score_vcf"]
