"""The school portal's Excel import sheets (destination): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.portal_excel.adapter import PortalExcelAdapter

    register(PortalExcelAdapter)
