/*
 * Built-in operator commands implemented in C by modules (no Lua involved), dispatched by
 * main.c: `clubio-dr encrypt ...`, `clubio-dr decrypt ...`. Each returns a process exit status
 * and prints its own errors (`clubio-dr: <message>` + `HINT:`), via rt_report_error().
 */
#ifndef RT_COMMANDS_H
#define RT_COMMANDS_H

#include "io/error.h"

/* argv[0] is the command name ("encrypt"). */
int crypto_cli_encrypt(int argc, char **argv);
int crypto_cli_decrypt(int argc, char **argv);

/* Prints an error the host's way (text or JSON per --json) and returns its exit status. */
int rt_report_error(const RtError *err);

#endif
