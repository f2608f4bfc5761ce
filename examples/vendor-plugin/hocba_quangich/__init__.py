"""Quảng Ích-style school software for hocba-hub (REST, tabular JSON pages): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    # Imported here, not at module level: listing plugins must not pay for every adapter's imports.
    from hocba_quangich.adapter import QuangIchAdapter

    register(QuangIchAdapter)
