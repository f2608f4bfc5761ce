"""SMAS-style school software (XML over HTTP, secondary schools): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.viettel.adapter import ViettelAdapter

    register(ViettelAdapter)
