// Peak FMA throughput of one core: 12 independent chains of 256-bit FMAs, no memory traffic.
// gcc -O3 -mavx2 -mfma bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak   (run two at once for both cores)
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
int main(){
  __m256 a[12]; for(int i=0;i<12;i++) a[i]=_mm256_set1_ps(i*0.001f);
  __m256 x=_mm256_set1_ps(0.999f), y=_mm256_set1_ps(0.0001f);
  long n=400000000; struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  for(long k=0;k<n;k++){ for(int i=0;i<12;i++) a[i]=_mm256_fmadd_ps(a[i],x,y);}
  clock_gettime(CLOCK_MONOTONIC,&t1);
  double s=(t1.tv_sec-t0.tv_sec)+(t1.tv_nsec-t0.tv_nsec)*1e-9; float r=0; for(int i=0;i<12;i++) r+=a[i][0];
  printf("%.1f GFLOP/s single core (%f)\n", n*12*16.0/s/1e9, r);
}
