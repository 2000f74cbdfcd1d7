// Peak FMA throughput of one core: 12 independent chains of FMAs, no memory traffic. Built with
// AVX-512 it uses 512-bit FMAs, otherwise 256-bit ones; run two at once to load both cores.
//   gcc -O3 -march=native bench/fma_peak.c -o /tmp/fma_peak && (/tmp/fma_peak & /tmp/fma_peak; wait)
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#endif
int main(){
  vec a[12]; for(int i=0;i<12;i++) a[i]=SET1(i*0.001f);
  vec x=SET1(0.999f), y=SET1(0.0001f);
  long n=400000000; struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  for(long k=0;k<n;k++){ for(int i=0;i<12;i++) a[i]=FMA(a[i],x,y);}
  clock_gettime(CLOCK_MONOTONIC,&t1);
  double s=(t1.tv_sec-t0.tv_sec)+(t1.tv_nsec-t0.tv_nsec)*1e-9; float r=0; for(int i=0;i<12;i++) r+=a[i][0];
  printf("%.1f GFLOP/s single core, %d-bit FMAs (%f)\n", n*12*LANES*2.0/s/1e9, LANES*32, r);
}
