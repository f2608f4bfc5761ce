"""Local key files (PKCS#12): for tests, demos and small setups."""

from hub import hookimpl


@hookimpl
def hocba_hub_signer_types(register):
    from signers.pkcs12.signer import Pkcs12Signer

    register(Pkcs12Signer)
