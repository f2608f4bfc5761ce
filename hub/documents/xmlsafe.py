"""Parse XML that came from elsewhere without letting it reach anything: no entities, no DTD,
no network. A document with a DOCTYPE is refused outright (the học bạ has none), so entity
expansion tricks never get as far as a parser that might honour them."""

from __future__ import annotations

from lxml import etree

__all__ = ["ElementTree", "UnsafeXml", "XmlElement", "parse", "schema_errors"]

# lxml exports its element and tree types only under these underscored names; one alias here
# keeps every annotation elsewhere on a public name.
XmlElement = etree._Element
ElementTree = etree._ElementTree


class UnsafeXml(ValueError):
    """The bytes are not well-formed XML, or they carry a DOCTYPE (entities, external DTDs)."""


def _parser() -> etree.XMLParser:
    # A parser per call: lxml parsers are not thread-safe, and this is cheap.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=False, remove_pis=False)


def parse(data: bytes) -> ElementTree:
    """The document tree of ``data``; ``UnsafeXml`` naming the problem otherwise."""
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise UnsafeXml(f"not well-formed XML: {exc}") from None
    if tree.docinfo.doctype:
        raise UnsafeXml("XML with a DOCTYPE is refused (entities and DTDs are not accepted)")
    return tree


def schema_errors(schema: etree.XMLSchema, document: bytes) -> list[str]:
    """What makes ``document`` invalid against ``schema``, a line each ([] when valid); a
    document that does not parse safely is one such line."""
    try:
        tree = parse(document)
    except ValueError as exc:
        return [str(exc)]
    if schema.validate(tree):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]
