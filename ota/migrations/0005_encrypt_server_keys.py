"""Encrypt signing keys that older versions stored in clear.

Rows written before keys were encrypted at rest hold a plaintext PKCS#8 PEM.
This rewrites each as encrypted PKCS#8 under SERVER_KEY_PASSPHRASE, so no
deployment depends on a key's first use (or `rotate_server_key encrypt`) to get
its private keys out of the database in clear. Self-contained on purpose (a
migration must not follow later changes of `ota.keys`); the update is
conditional, like the run-time conversion, so a web process converting the
same row at the same moment is harmless. Reversing leaves the keys encrypted.
"""

from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.db import migrations

CLEAR = "BEGIN PRIVATE KEY"


def encrypt_clear_keys(apps, schema_editor):
    ServerKey = apps.get_model("ota", "ServerKey")
    passphrase = settings.SERVER_KEY_PASSPHRASE.encode()
    for pk, pem in ServerKey.objects.filter(private_key_pem__contains=CLEAR).values_list(
        "pk", "private_key_pem"
    ):
        private = serialization.load_pem_private_key(pem.encode(), password=None)
        encrypted = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        ).decode()
        ServerKey.objects.filter(pk=pk, private_key_pem=pem).update(private_key_pem=encrypted)


class Migration(migrations.Migration):
    dependencies = [("ota", "0004_shadow")]

    operations = [migrations.RunPython(encrypt_clear_keys, migrations.RunPython.noop)]
