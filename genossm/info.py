"""``genossm info``: what a token store holds."""

from __future__ import annotations

from genossm.store import TokenStore


def store_summary(path) -> dict:
    """What the store holds, once its files are checked (``TokenStore.check_files``)."""
    store = TokenStore(path)
    store.check_files()
    contigs = [{"name": c.name, "length": c.length, "n_count": c.n_count,
                "iupac_count": c.iupac_count,
                "softmasked_fraction": c.softmasked / c.length if c.length else 0.0,
                "md5": c.md5, "topology": c.topology} for c in store.contigs]
    return {
        "path": str(store.path),
        "format": store.meta["format"],
        "alphabet": store.meta["alphabet"],
        "created_by": store.meta["created_by"],
        "chunk_size": store.meta["chunk_size"],
        "sources": [s["path"] for s in store.meta["sources"]],
        "contigs": contigs,
        "total_bases": sum(c["length"] for c in contigs),
        "total_n": sum(c["n_count"] for c in contigs),
        "reads": store.n_reads,
        "read_bases": store.n_read_bases,
    }


def format_summary(s: dict) -> str:
    lines = [f"{s['path']}  ({s['created_by']}, format {s['format']}, "
             f"alphabet {s['alphabet']})",
             f"sources: {', '.join(s['sources'])}", ""]
    width = max([len("contig")] + [len(c["name"]) for c in s["contigs"]])
    # topology: a column only when an input stated one (GenBank/EMBL); "-" where not stated
    topology = any(c["topology"] for c in s["contigs"])
    lines.append(f"{'contig':<{width}}  {'length':>13}  {'N':>11}  {'soft-masked':>11}"
                 + ("  topology" if topology else ""))
    for c in s["contigs"]:
        lines.append(f"{c['name']:<{width}}  {c['length']:>13,}  {c['n_count']:>11,}  "
                     f"{c['softmasked_fraction']:>11.2%}"
                     + (f"  {c['topology'] or '-'}" if topology else ""))
    lines.append("")
    lines.append(f"{len(s['contigs'])} contigs, {s['total_bases']:,} bases "
                 f"({s['total_n']:,} N); {s['reads']:,} reads, {s['read_bases']:,} read bases")
    return "\n".join(lines)
