"""vnEdu-style school software (REST/JSON pull): see CONTRACT.md."""

from hub import hookimpl


@hookimpl
def hocba_hub_adapter_types(register):
    from adapters.vnpt.adapter import VnptAdapter

    register(VnptAdapter)
