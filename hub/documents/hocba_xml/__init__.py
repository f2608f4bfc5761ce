"""The built-in XML học bạ layout, registered like any third-party document format."""

from hub.documents.hocba_xml.format import HocbaXml
from hub.hookspecs import hookimpl


@hookimpl
def hocba_hub_document_formats(register):
    register(HocbaXml)
