#ifndef MATHLIB_H
#define MATHLIB_H
long gcd(long a, long b);
long fib(int n);
#endif
