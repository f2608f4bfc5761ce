"""Hardware tokens and HSMs over PKCS#11 (school seals on a USB token; SoftHSM2 in tests)."""

from hub import hookimpl


@hookimpl
def hocba_hub_signer_types(register):
    from signers.pkcs11.signer import Pkcs11Signer

    register(Pkcs11Signer)
