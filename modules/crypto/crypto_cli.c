/*
 * `clubio-dr encrypt` / `clubio-dr decrypt` — placeholder until the crypto issue lands.
 */
#include "commands.h"

int crypto_cli_encrypt(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RtError err;
    rt_error_init(&err);
    rt_error_set(&err, RT_CLASS_USAGE, "usage.not_implemented", "encrypt is not implemented yet");
    return rt_report_error(&err);
}

int crypto_cli_decrypt(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RtError err;
    rt_error_init(&err);
    rt_error_set(&err, RT_CLASS_USAGE, "usage.not_implemented", "decrypt is not implemented yet");
    return rt_report_error(&err);
}
