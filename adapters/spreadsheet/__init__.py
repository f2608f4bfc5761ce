"""CSV/XLSX files dropped in a watched folder, for schools without an API: see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.spreadsheet.adapter import SpreadsheetAdapter

    register(SpreadsheetAdapter)
