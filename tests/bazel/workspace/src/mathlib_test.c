#include <stdio.h>
#include "mathlib.h"

int main(void) {
    int failures = 0;
    if (gcd(84, 36) != 12) { puts("gcd(84, 36) != 12"); failures++; }
    if (gcd(-7, 21) != 7) { puts("gcd(-7, 21) != 7"); failures++; }
    if (fib(10) != 55) { puts("fib(10) != 55"); failures++; }
    if (fib(50) != 12586269025L) { puts("fib(50) wrong"); failures++; }
    return failures == 0 ? 0 : 1;
}
