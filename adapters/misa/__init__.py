"""EMIS-style school software (REST/JSON, HMAC-signed requests): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.misa.adapter import MisaAdapter

    register(MisaAdapter)
