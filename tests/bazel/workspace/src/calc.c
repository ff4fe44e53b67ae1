#include <stdio.h>
#include "mathlib.h"

int main(void) {
    printf("gcd(84, 36) = %ld\nfib(50) = %ld\n", gcd(84, 36), fib(50));
    return 0;
}
